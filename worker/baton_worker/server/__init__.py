"""baton_worker.server"""
