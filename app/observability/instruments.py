"""What each process counts, written to its own files in the metrics folder and added up at
scrape time. No label carries a project, key, model name or raw path."""

from prometheus_client import Counter, Gauge, Histogram

from app.ml.serving import ServingObserver

HTTP_REQUESTS = Counter(
    "tuneforge_http_requests", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "tuneforge_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template.",
    ["method", "route"])

PREDICT_ROWS = Counter("tuneforge_predict_rows", "Predict inputs answered by forward passes.")
PREDICT_BATCH_ROWS = Histogram(
    "tuneforge_predict_batch_rows", "Rows per forward pass (several callers' rows share one).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
PREDICT_QUEUE_WAIT = Histogram(
    "tuneforge_predict_queue_wait_seconds",
    "Time a predict request waited in its model's queue before its first row was taken.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))

MODEL_CACHE_HITS = Counter("tuneforge_model_cache_hits",
                           "Predict requests that found their model loaded.")
MODEL_CACHE_LOADS = Counter("tuneforge_model_cache_loads", "Models loaded for predict.")
MODEL_CACHE_EVICTIONS = Counter("tuneforge_model_cache_evictions",
                                "Models unloaded to stay within the serving memory budget.")
# livesum: the bytes of running processes only; a process that exited holds none.
MODEL_CACHE_BYTES = Gauge("tuneforge_model_cache_bytes",
                          "Bytes of loaded models' weights, in running API processes.",
                          multiprocess_mode="livesum")


class ServingMetrics(ServingObserver):
    """Records what the batch runners and the model cache report."""

    def request_waited(self, seconds: float) -> None:
        PREDICT_QUEUE_WAIT.observe(seconds)

    def pass_ran(self, rows: int) -> None:
        PREDICT_ROWS.inc(rows)
        PREDICT_BATCH_ROWS.observe(rows)

    def cache_hit(self) -> None:
        MODEL_CACHE_HITS.inc()

    def model_loaded(self) -> None:
        MODEL_CACHE_LOADS.inc()

    def model_evicted(self) -> None:
        MODEL_CACHE_EVICTIONS.inc()

    def cache_holds(self, size_bytes: int) -> None:
        MODEL_CACHE_BYTES.set(size_bytes)
