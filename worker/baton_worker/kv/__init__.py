"""baton_worker.kv"""
