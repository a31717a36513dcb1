"""A bundle's input/output contract, read from `configs/metadata.json` and checked once.

The engine and the pipelines learn shapes, output names, channel meanings and operating points
from here, never from constants: a retrained or replaced model changes the bundle, not the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from node.inference.bundle import Bundle, BundleError

Activation = Literal["sigmoid", "softmax", "none"]
_ACTIVATIONS = ("sigmoid", "softmax", "none")


@dataclass(frozen=True)
class Output:
    """One network output: per-image array shape and what each channel means."""

    name: str
    shape: tuple[int, ...]  # per image, without the batch axis
    channels: tuple[str, ...]
    activation: Activation  # applied by the engine; "none" returns the network's raw values
    format: str  # "classification", "segmentation", ... as the bundle states it


@dataclass(frozen=True)
class Contract:
    input_name: str
    input_shape: tuple[int, ...]  # (channels, *spatial), per image
    outputs: tuple[Output, ...]  # in the order the network returns them
    operating_points: dict[str, Any]
    extras: dict[str, Any]  # the bundle's `fracnode` section, for pipeline-specific settings

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.input_shape[1:]

    def output(self, name: str) -> Output:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"output {name!r} is not in the contract ({', '.join(self.output_names)})")

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)


def read_contract(bundle: Bundle) -> Contract:
    """The contract of `bundle`; a BundleError names the metadata entry that does not fit."""
    where = bundle.root / "configs" / "metadata.json"
    if len(bundle.inputs) != 1:
        raise BundleError(f"{where}: network_data_format.inputs has {len(bundle.inputs)} entries; one is supported")
    input_name, spec = next(iter(bundle.inputs.items()))
    input_shape = (
        _positive(spec, "num_channels", where),
        *_spatial(spec, where, f"inputs.{input_name}"),
    )
    order = list(bundle.extras.get("output_order") or bundle.outputs)
    unknown = [name for name in order if name not in bundle.outputs]
    if unknown or not order:
        raise BundleError(f"{where}: fracnode.output_order {order} does not name the outputs {list(bundle.outputs)}")
    activations = _activations(bundle.config.get("postprocessing"), order, bundle)
    outputs = []
    for name in order:
        out = bundle.outputs[name]
        channels = _positive(out, "num_channels", where)
        fmt = str(out.get("format", ""))
        # Classification outputs are one value per channel; maps keep their spatial axes.
        shape = (channels,) if fmt == "classification" else (channels, *_spatial(out, where, f"outputs.{name}"))
        names = tuple(bundle.channels(name)) or tuple(str(i) for i in range(channels))
        outputs.append(Output(name, shape, names, activations.get(name, "none"), fmt))
    return Contract(
        input_name=input_name,
        input_shape=input_shape,
        outputs=tuple(outputs),
        operating_points=dict(bundle.extras.get("operating_points") or {}),
        extras=dict(bundle.extras),
    )


def _positive(spec: dict[str, Any], key: str, where: object) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or value < 1:
        raise BundleError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _spatial(spec: dict[str, Any], where: object, path: str) -> tuple[int, ...]:
    shape = spec.get("spatial_shape")
    if not shape or not all(isinstance(v, int) and v > 0 for v in shape):
        raise BundleError(f"{where}: {path}.spatial_shape must be positive integers, got {shape!r}")
    return tuple(shape)


def _activations(postprocessing: Any, order: list[str], bundle: Bundle) -> dict[str, Activation]:
    """Activations from a plain `{"output": "sigmoid"}` postprocessing mapping in inference.json.

    MONAI transform chains (`_target_`, as in Model Zoo bundles) are the bundle's own
    post-processing; the engine then returns raw network outputs and leaves those to the caller.
    """
    if not isinstance(postprocessing, dict) or "_target_" in postprocessing:
        return {}
    found: dict[str, Activation] = {}
    for name in order:
        value = postprocessing.get(name, "none")
        if value not in _ACTIVATIONS:
            raise BundleError(
                f"{bundle.root / 'configs' / 'inference.json'}: postprocessing.{name} is {value!r};"
                f" expected one of {', '.join(_ACTIVATIONS)}"
            )
        found[name] = value
    return found
