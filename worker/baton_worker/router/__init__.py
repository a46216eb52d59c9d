"""baton_worker.router"""
