"""Running the stages: the pipeline, model calls, worker threads, runs, progress and Ray."""
