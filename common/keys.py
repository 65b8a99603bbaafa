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
LOSS_KEYS = ("vae-loss", "gan-d-loss", "gan-g-loss")


def number(record: object, key: str) -> float:
    """A numeric value from a Metric/ConfigRecord; an error names the key if it is missing or not a number."""
    value = record[key]  # type: ignore[index]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record value {key!r} should be a number, got {value!r}")
    return float(value)


SETTING_PREFIX = "setting:"  # evaluate request: ConfigRecord keys holding a packed recommender's settings
