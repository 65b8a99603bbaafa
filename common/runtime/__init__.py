"""The process around the maths: torch device, OpenMP spin, Flower object pulls, atomic files, seeds."""
