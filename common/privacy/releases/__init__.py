"""The one-shot DP releases of a node's users: statistics, co-occurrence, and the clipped sums under them."""
