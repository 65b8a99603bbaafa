"""Names of the records and metrics that cross the wire, in one place."""

from __future__ import annotations

# What a Flower ConfigRecord holds
ConfigValue = int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]

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
NEEDS_COOCCURRENCE = "needs-cooccurrence"  # query request: 1 if it still has to release the co-occurrence
COOCCURRENCE = "cooccurrence"  # message action query.cooccurrence; its reply's array (upper triangle, M(M+1)/2)
MARGINAL_ITEMS = "marginal-items"  # co-occurrence request: the M catalogue indices (chosen from released counts)
FIRST_ORDER_INSTEAD = "first-order-instead"  # co-occurrence request: 1 = spend its budget on the statistics again
EPSILON_COOCCURRENCE = "epsilon-cooccurrence"
RUN_KEY = "run-key"  # every request: the server's key of this run directory, stable across resumes
REQUESTER = "requester"  # every request: what the server says it is (host, output directory)
EPSILON_CAP = "epsilon-cap"  # query reply: this silo's lifetime cap (set on the node)
DP_EVALUATION = "dp-evaluation"  # evaluate reply: 1 if its sums carry DP noise (charged), 0 if exact (simulation)
EPSILON_EVALUATION = "epsilon-evaluation"
EVALUATION_LABEL = "label"  # evaluate request: the result row, recorded in the node's ledger
REPLAYED = "replayed"  # train reply: 1 if it is the saved reply of a round already charged to this run
UPDATE_NORM = "update-norm"  # secure round reply: ‖w_k − w_g‖ before any bound (public: DP post-processing)
UPDATE_NORM_BOUND = "update-norm-bound"  # secure round request (norm-bound): the node bounds its update to it
LOSS_KEYS = ("vae-loss", "gan-d-loss", "gan-g-loss")


def number(record: object, key: str) -> float:
    """A numeric value from a Metric/ConfigRecord; an error names the key if it is missing or not a number."""
    value = record[key]  # type: ignore[index]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record value {key!r} should be a number, got {value!r}")
    return float(value)


def integers(record: object, key: str) -> list[int]:
    """A list of ints from a ConfigRecord (node ids); an error names the key otherwise."""
    value = record[key]  # type: ignore[index]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"record value {key!r} should be a list of integers, got {type(value).__name__}")
    return [int(v) for v in value]


def blobs(record: object, key: str) -> list[bytes]:
    """A list of bytes from a ConfigRecord (keys, shares); an error names the key otherwise."""
    value = record[key]  # type: ignore[index]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise TypeError(f"record value {key!r} should be a list of bytes, got {type(value).__name__}")
    return list(value)


def blob(record: object, key: str) -> bytes:
    """A bytes value from a ConfigRecord (a public key); an error names the key otherwise."""
    value = record[key]  # type: ignore[index]
    if not isinstance(value, bytes):
        raise TypeError(f"record value {key!r} should be bytes, got {type(value).__name__}")
    return value


def by_node(record: object, key: str) -> dict[int, bytes]:
    """{node: bytes} from a ConfigRecord's aligned lists SECAGG_NODES and ``key``."""
    return dict(zip(integers(record, SECAGG_NODES), blobs(record, key), strict=True))


def as_lists(values: dict[int, bytes], key: str) -> dict[str, ConfigValue]:
    """{node: bytes} as the aligned lists SECAGG_NODES and ``key`` (a ConfigRecord holds lists, not maps)."""
    order = sorted(values)
    return {SECAGG_NODES: order, key: [values[n] for n in order]}


def text(record: object, key: str) -> str:
    return str(record[key])  # type: ignore[index]


def texts(record: object, key: str) -> list[str]:
    """A list of strings from a ConfigRecord (labels); an error names the key otherwise."""
    value = record[key]  # type: ignore[index]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"record value {key!r} should be a list of strings, got {type(value).__name__}")
    return list(value)


SETTING_PREFIX = "setting:"  # evaluate request: ConfigRecord keys holding a packed recommender's settings
TARGETS = "targets"  # evaluate request: an attack study's target items (their top-K hit rate is counted)

# Secure aggregation (see client/secure.py and server/secure_release.py)
SECAGG_KEYS = "secagg_keys"  # message action: query.secagg_keys (stage 1)
SECAGG_SHARES = "secagg_shares"  # message action: query.secagg_shares (stage 2)
SECAGG_UNMASK = "secagg_unmask"  # message action: query.secagg_unmask (stage 4)
SECAGG_CONSISTENCY = "secagg_consistency"  # message action: signed mode's consistency stage (before stage 4)
FEDSGD = "fedsgd"  # message action: query.fedsgd, the masked stage of a secure FedSGD step (round-mode fedsgd)
SECAGG_LABEL = "secagg-label"  # which aggregation (run key / release / round): masked and unmask stages
SECAGG_LABELS = "secagg-labels"  # keys and shares stages: the aggregations set up together (one or a batch)
SECAGG_THRESHOLD = "secagg-threshold"
SECAGG_BITS = "secagg-bits"
SECAGG_NODES = "secagg-nodes"  # node ids: the key list, share recipients/senders, or survivors
SECAGG_ORDER = "secagg-order"  # shares stage: the server's random ring of the nodes (SecAgg+'s graph)
SECAGG_NEIGHBOURS = "secagg-neighbours"  # keys stage: k, SecAgg+'s neighbours per node (0: every node)
CHANNEL_KEY = "channel-key"  # X25519 public key(s) for the share channel
MASK_KEY = "mask-key"  # X25519 public key(s) for the pairwise masks
SHARES = "shares"  # encrypted (stage 2) or revealed (stage 4) Shamir shares, aligned with SECAGG_NODES
SIGNER = "secagg-signer"  # signed mode, keys reply: the node's registered public key (OpenSSH)
SIGNERS = "secagg-signers"  # signed mode, shares stage: each node's signer, aligned with SECAGG_NODES
SIGNATURES = "secagg-signatures"  # signed mode: keys' signatures (keys reply, shares stage), survivors' (unmask)
CONFIRMED = "secagg-confirmed"  # signed mode, unmask stage: the nodes whose SIGNATURES confirm the survivors
MASKED = "masked"  # the masked release, residues mod 2^b (uint64)
NOISE_VARIANCE = "noise-variance"  # keys stage: the central Skellam variance a node needs; release: what it added
SECAGG_VARIANCE = "secagg-variance"  # shares stage: the central Skellam variance every node adds 1/t of
EPSILON_OWN_NOISE = "epsilon-own-noise"  # cumulative ε counting only this node's own noise in secure sums
