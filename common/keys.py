"""Names of the records and metrics that cross the wire, in one place."""

ARRAYS = "arrays"  # ArrayRecord: the whole model bundle, keys prefixed by MODEL_PREFIXES
CONFIG = "config"  # ConfigRecord: round settings (request) or refusal reason (reply)
METRICS = "metrics"  # MetricRecord: aggregate numbers only

MODEL_PREFIXES = ("vae.", "gan.generator.", "gan.discriminator.")

NUM_EXAMPLES = "num-examples"
NUM_ITEMS = "num-items"
ITEM_IDS = "item-ids"  # query reply: the shared (public) catalogue's original item ids
EPSILON = "epsilon"
EPSILON_VAE = "epsilon-vae"
EPSILON_GAN = "epsilon-gan"
EPSILON_STATISTICS = "epsilon-statistics"
ITEM_COUNTS = "item-counts"  # DP statistics reply: noisy per-item counts (n_items,)
LENGTH_HISTOGRAM = "length-histogram"  # DP statistics reply: noisy history-length histogram (n_bins,)
NOISE_STD = "noise-std"  # DP statistics reply: std of the Gaussian noise per coordinate (public)
STATISTICS = "statistics"  # message action: query.statistics
EVALUATE_RECOMMENDER = "recommender"  # ConfigRecord naming the recommender in an evaluate message
DELTA = "delta"
REFUSED = "refused"
REASON = "reason"
SERVER_ROUND = "server-round"
PLANNED_ROUNDS = "planned-rounds"
FIRST_ROUND = "first-round"  # query request: the first round this (possibly resumed) run will ask for
NEEDS_STATISTICS = "needs-statistics"  # query request: 1 if the run still has to release the DP statistics
RUN_KEY = "run-key"  # every request: the server's key of this run directory, stable across resumes
REQUESTER = "requester"  # every request: what the server says it is (host, output directory)
EPSILON_CAP = "epsilon-cap"  # query reply: this silo's lifetime cap (set on the node)
REPLAYED = "replayed"  # train reply: 1 if it is the saved reply of a round already charged to this run
LOSS_KEYS = ("vae-loss", "gan-d-loss", "gan-g-loss")


def number(record: object, key: str) -> float:
    """A numeric value from a Metric/ConfigRecord; an error names the key if it is missing or not a number."""
    value = record[key]  # type: ignore[index]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record value {key!r} should be a number, got {value!r}")
    return float(value)


SETTING_PREFIX = "setting:"  # evaluate request: ConfigRecord keys holding a packed recommender's settings
