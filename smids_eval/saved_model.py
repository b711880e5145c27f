"""A saved fold model (``RUN/models/<variant>/fold<k>-<setting>.pt``): load it, check it, and
rebuild its network exactly as trained (same variant, profile, backbone weights and, for random
weights, the run seed that drew the frozen prefix). Used by predict and the report's Grad-CAM."""

from __future__ import annotations

from pathlib import Path

from .config import Profile, profile_from_dict
from .engine import Engine
from .errors import ConfigError
from .run_folder import SavedFold
from .variants import Variant


def weights_spec(saved: SavedFold, weights_file: str | None, path: Path) -> str:
    """What to pass as Engine ``weights`` to get the backbone the fold was trained on: for a
    weights file, ``weights_file`` or else the path the run used, if it is still there."""
    wid = saved.weights
    if wid.startswith("file:"):
        used = str(saved.profile["model"]["weights"])
        if not weights_file and Path(used).is_file():
            weights_file = used
        if not weights_file:
            raise ConfigError(f"{path} was trained on the backbone weights file {wid.split(':')[1]} "
                              f"(sha256 {wid.rsplit(':', 1)[1]}…); pass --weights-file PATH to "
                              f"that same file")
        if not Path(weights_file).is_file():
            raise ConfigError(f"--weights-file {weights_file} does not exist")
        return weights_file
    if weights_file:
        raise ConfigError(f"{path} was trained with backbone weights {wid!r}, not a file; drop "
                          f"--weights-file")
    if wid == "random":
        return "random"
    if wid.startswith("imagenet:"):
        return "imagenet"
    raise ConfigError(f"{path}: unknown backbone weights id {wid!r}")


def build_engine(saved: SavedFold, device: str, weights_file: str | None, path: Path,
                 precision: str | None = None) -> Engine:
    """The fold's network: same variant, profile, backbone and prefix seed as in training."""
    train = {"compile": False} | ({"precision": precision} if precision else {})
    profile: Profile = profile_from_dict(saved.profile).replace(train=train)
    seed = saved.seed
    engine = Engine(Variant(**saved.variant), profile, device=device,
                    weights=weights_spec(saved, weights_file, path), cache_dir=None,
                    init_seed=seed, augment_seed=seed, progress=False)
    if engine.weights_id.rsplit(":", 1)[-1] != saved.weights.rsplit(":", 1)[-1]:
        raise ConfigError(f"--weights-file {weights_file} is {engine.weights_id} but {path} was "
                          f"trained on {saved.weights}; pass the file the run used")
    return engine


def check_state(engine: Engine, saved: SavedFold, path: Path) -> None:
    """The saved suffix must fit today's network, else the run came from other code."""
    want = {k: tuple(v.shape) for k, v in engine.model.suffix.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in saved.suffix_state.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise ConfigError(f"model file {path} does not fit the current network (differs in "
                          f"{', '.join(diff[:4])}{' …' if len(diff) > 4 else ''}); it was trained "
                          f"by smids_eval commit {saved.provenance.get('run_commit', '?')}: "
                          f"predict with that version or rerun the study")
