"""baton_worker.bench"""
