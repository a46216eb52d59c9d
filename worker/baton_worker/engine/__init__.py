"""baton_worker.engine"""
