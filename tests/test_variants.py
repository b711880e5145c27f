"""The variant registry holds the study's table exactly and rejects malformed tables."""

from __future__ import annotations

import pytest

from smids_eval.config import load_profile, load_search_space, resolve_profile_name
from smids_eval.errors import ConfigError
from smids_eval.variants import get_variant, load_variants, select_variants

ARCHITECTURE = {  # channels, augmentation, dropout (study slides, table 1)
    "A.0": ("grey", False, False), "B.0": ("rgb", False, False), "C.0": ("grey", True, False),
    "D.0": ("rgb", True, False), "E.0": ("grey", True, True), "F.0": ("rgb", True, True),
}
PARAMETERS = {  # unfrozen, optimizer, learning rate (table 2; all F.0's architecture)
    "F.0": (False, "adam", 1e-4), "F.1": (True, "adam", 1e-4), "F.2": (False, "sgd", 1e-4),
    "F.3": (False, "adam", 1e-5), "F.4": (False, "adam", 1e-3),
}


def test_registry_matches_the_study_tables():
    variants = load_variants()
    # eleven table rows, ten distinct variants: F.0 is the last row of table 1 and the first of table 2
    assert len(ARCHITECTURE) + len(PARAMETERS) == 11
    assert list(variants) == ["A.0", "B.0", "C.0", "D.0", "E.0", "F.0", "F.1", "F.2", "F.3", "F.4"]
    for name, (channels, aug, dropout) in ARCHITECTURE.items():
        v = variants[name]
        assert (v.channels, v.augmentation, v.dropout) == (channels, aug, dropout)
        assert (v.unfreeze_blocks, v.optimizer, v.learning_rate) == (0, "adam", 1e-4)
    for name, (unfrozen, opt, lr) in PARAMETERS.items():
        v = variants[name]
        assert (v.channels, v.augmentation, v.dropout) == ("rgb", True, True)
        assert (v.unfreeze_blocks > 0, v.optimizer, v.learning_rate) == (unfrozen, opt, lr)
    assert variants["A.0"].in_channels == 1 and variants["F.1"].in_channels == 3


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown variant 'G.7'; valid variants: A.0, B.0"):
        get_variant("G.7")
    with pytest.raises(ConfigError, match="G.7"):
        select_variants(["F.1", "G.7"])
    assert len(select_variants(["all"])) == 10
    assert [v.name for v in select_variants(["F.1", "A.0", "F.1"])] == ["F.1", "A.0"]


@pytest.mark.parametrize("body,message", [
    ('[variants."X"]\nchannels = "rgb"\n', "missing keys"),
    ('[variants."X"]\nchannels = "cmyk"\naugmentation = true\ndropout = true\n'
     'unfreeze_blocks = 0\noptimizer = "adam"\nlearning_rate = 1e-4\n', "channels = 'cmyk'"),
    ('[variants."X"]\nchannels = "rgb"\naugmentation = "yes"\ndropout = true\n'
     'unfreeze_blocks = 0\noptimizer = "adam"\nlearning_rate = 1e-4\n', "augmentation"),
    ('[variants."X"]\nchannels = "rgb"\naugmentation = true\ndropout = true\n'
     'unfreeze_blocks = 0\noptimizer = "rmsprop"\nlearning_rate = 1e-4\n', "optimizer"),
    ("[variants\nbroken", "not valid TOML"),
    ("title = 1\n", "no \\[variants"),
])
def test_malformed_tables_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "variants.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_variants(path)


def test_adding_a_variant_is_one_table(tmp_path):
    from smids_eval.toml import studies_dir

    text = (studies_dir() / "variants.toml").read_text()
    text += ('\n[variants."G.0"]\nchannels = "rgb"\naugmentation = true\ndropout = true\n'
             'unfreeze_blocks = 2\noptimizer = "adamw"\nlearning_rate = 3e-4\n')
    (tmp_path / "variants.toml").write_text(text)
    assert load_variants(tmp_path / "variants.toml")["G.0"].unfreeze_blocks == 2


def test_profiles_and_search_space():
    quick, full = load_profile("quick"), load_profile("full")
    assert quick.data.image_size < full.data.image_size == 224
    assert full.tune.trials >= 20 and quick.train.feature_cache
    assert resolve_profile_name("auto", cuda_available=True) == "full"
    assert resolve_profile_name("auto", cuda_available=False) == "quick"
    with pytest.raises(ConfigError, match="unknown profile 'turbo'"):
        load_profile("turbo")
    space = load_search_space()
    assert set(space.optimizers) == {"adam", "adamw", "sgd"}
    assert space.lr_low <= 1e-6 and space.lr_high >= 1e-2
