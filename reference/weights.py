"""Loading weights into the detector: its own checkpoints, or a torchvision
ResNet state_dict (e.g. ImageNet weights) into the backbone."""
import re

import torch

_TV_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)$")
_TV_DOWN = re.compile(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$")


def is_torchvision_resnet(state):
    return any(k.startswith("layer1.") for k in state) and "conv1.weight" in state


def from_torchvision_resnet(state):
    """torchvision's ResNet key names -> this backbone's (`fc.*` dropped).
    Unknown keys are kept unchanged, so a strict load reports them."""
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        if k.startswith("conv1."):
            out["stem.0." + k[len("conv1."):]] = v
        elif k.startswith("bn1."):
            out["stem.1." + k[len("bn1."):]] = v
        elif m := _TV_BLOCK.match(k):
            layer, block, kind, i, rest = m.groups()
            out[f"layers.{int(layer) - 1}.{block}.c{i}.{0 if kind == 'conv' else 1}.{rest}"] = v
        elif m := _TV_DOWN.match(k):
            layer, block, j, rest = m.groups()
            out[f"layers.{int(layer) - 1}.{block}.down.{j}.{rest}"] = v
        else:
            out[k] = v
    return out


def _unwrap(obj):
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def load_weights(model, path, partial=False, log=print):
    """Loads `path` into the detector, or into its backbone when it holds a
    torchvision ResNet. Strict by default: any missing, unexpected or
    mis-shaped key is an error. With partial=True the keys that match in
    name and shape are loaded and the rest are listed; loading nothing at
    all is an error either way."""
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"--weights {path}: not a state_dict (or a checkpoint holding one under 'model')")
    target, what = model, "the detector"
    if is_torchvision_resnet(state):
        state, target, what = from_torchvision_resnet(state), model.backbone, "the backbone (torchvision ResNet)"
    own = target.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(matched))
    missing = sorted(set(own) - set(matched))
    if not matched:
        raise ValueError(f"--weights {path}: no key matches {what} (first keys: {sorted(state)[:5]})")
    if not partial and (skipped or missing):
        detail = [f"unexpected or mis-shaped: {skipped[:10]}{' ...' if len(skipped) > 10 else ''}"] if skipped else []
        detail += [f"missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}"] if missing else []
        raise ValueError(f"--weights {path} does not match {what} ({len(skipped)} unexpected, {len(missing)} "
                         f"missing): {'; '.join(detail)}. Pass --partial-weights to load what matches.")
    target.load_state_dict(matched, strict=False)
    log(f"loaded {path} into {what}: {len(matched)} tensors")
    if skipped:
        log(f"  skipped (no match in name and shape): {', '.join(skipped)}")
    if missing:
        log(f"  not in the file (kept at their initial values): {', '.join(missing)}")
    return matched, skipped, missing
