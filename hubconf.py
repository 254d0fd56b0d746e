"""PyTorch Hub entries: one per experiment config (`configs/experiment/*.yaml`, with `-` written `_`), one per
released checkpoint (`strhub/hub/released.yaml`), and `clip4str_base`, `clip4str_large`, `clip4str_huge`.

    model = torch.hub.load(REPO, "clip4str_base", source="local", pretrained=True)   # REPO: a clone of this repository
    model = torch.hub.load(REPO, "tiny", source="local", pretrained=False)           # random weights, no file needed

Each returns the plain model (as `strhub.models.checkpoint.load_model` does), in eval mode: `model(images)` gives
the logits and `model.tokenizer.decode(logits.softmax(-1))` the text. `pretrained=True` loads the released weights
through the catalogue (downloaded and checked once, see `strhub.hub`); `pretrained=False` builds the config with
random weights (no CLIP file is read). Keyword arguments override the model's settings.
"""
import typing

dependencies = ["torch", "torchvision", "open_clip", "timm", "omegaconf", "yaml", "PIL", "huggingface_hub"]

FAMILY_ENTRIES = {"clip4str_base": "vl4str", "clip4str_large": "vl4str-large", "clip4str_huge": "vl4str-huge"}


def _build(experiment: str, released: typing.Optional[str], pretrained: bool, overrides: typing.Any) -> typing.Any:
    """The model of an entry: the released checkpoint's weights, or the experiment config's random ones."""
    from strhub.keys import check_keys
    from strhub.models.checkpoint import load_model
    from strhub.models.registry import Family, build_random

    if pretrained:
        if released is None:
            raise ValueError(f"experiment {experiment!r} has no released weights; pretrained=False builds it with "
                             f"random weights (strhub.hub.list_released() lists the released checkpoints)")
        return load_model(released, **overrides).eval()
    family = Family.of(experiment)
    check_keys(overrides, family.known_settings(), f"setting for a {family.name} model")
    return build_random(experiment, **overrides).eval()


def _entry(name: str, experiment: str, released: typing.Optional[str], title: str) -> typing.Callable[..., typing.Any]:
    def entry(pretrained: bool = False, **overrides: typing.Any) -> typing.Any:
        return _build(experiment, released, pretrained, overrides)

    entry.__name__ = entry.__qualname__ = name
    weights = f"the released {released}" if released else "none released"
    entry.__doc__ = (f"{title}. pretrained=True: {weights}; pretrained=False: random weights. Keyword arguments "
                     f"override the model's settings.")
    return entry


def _entries() -> None:
    from strhub.config import experiments
    from strhub.hub import list_released

    released = list_released()
    defaults = {entry.experiment: entry.name for entry in released if entry.default}
    for experiment in experiments():
        name = experiment.replace("-", "_")
        globals()[name] = _entry(name, experiment, defaults.get(experiment), f"Experiment config {experiment}")
    for alias, experiment in FAMILY_ENTRIES.items():
        globals()[alias] = _entry(alias, experiment, defaults.get(experiment), f"Experiment config {experiment}")
    for entry in released:
        globals()[entry.name] = _entry(entry.name, entry.experiment, entry.name, entry.title)


_entries()
