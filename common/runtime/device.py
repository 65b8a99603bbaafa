"""Which torch device trains: the run's ``device`` (``cpu``, ``cuda`` or ``cuda:N``), checked before anything starts.

The run config's ``device`` applies to the clients' DP-SGD (Mult-VAE and GAN rounds) and to the
server's central training. Where it is checked:

* ``fedsynth run`` / ``train`` / local deployments start every process on this machine, so
  :func:`check_device_available` refuses a CUDA device torch cannot see before Flower starts;
* a SuperNode of a real deployment may lack the GPU the run asks for: :func:`training_device`
  then trains on the CPU and logs that it did. DP does not depend on the device (the same
  clipping, the same noise distribution, the same accountant); only the speed does.

Noise on a CUDA device comes from a CUDA generator (:mod:`fedsynth.common.privacy.dpsgd.noise`): the draws
differ from the CPU's for the same seed, as any two generators' do.
"""

from __future__ import annotations

import logging

import torch

from fedsynth.common.errors import ConfigError

log = logging.getLogger(__name__)


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; anything else is a ConfigError naming the value."""
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return torch.device(name)
    raise ConfigError(f"device must be cpu, cuda or cuda:N, got {name!r}.")


def missing_device_reason(name: str) -> str | None:
    """Why torch cannot use device ``name`` here (``None`` when it can)."""
    device = parse_device(name)
    if device.type == "cpu":
        return None
    if not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        return f"torch {torch.__version__} ({build}) sees no CUDA device"
    index = device.index or 0
    if index >= torch.cuda.device_count():
        return f"torch sees {torch.cuda.device_count()} CUDA device(s); there is no cuda:{index}"
    return None


def check_device_available(name: str, option: str = "--device") -> None:
    """Refuse a device this machine cannot train on, saying what to do."""
    reason = missing_device_reason(name)
    if reason is not None:
        raise ConfigError(
            f"{option} {name}: {reason}. Use {option} cpu, or install a CUDA build of torch on a machine with a GPU "
            "(docs/scale.md, 'GPU')."
        )


def training_device(name: str) -> torch.device:
    """The device a client trains on: ``name`` when this node has it, else the CPU (logged)."""
    reason = missing_device_reason(name)
    if reason is None:
        return parse_device(name)
    log.warning("the run asks for device %s, but %s: this node trains on the CPU.", name, reason)
    return torch.device("cpu")


def device_description(device: torch.device) -> str:
    """``cpu (N threads)`` or the CUDA card's name, e.g. ``cuda:0 (NVIDIA H200, 139.8 GiB)``."""
    if device.type != "cuda":
        return f"cpu ({torch.get_num_threads()} threads)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
