"""What a backbone returns, as timm describes it: ``feature_info`` from the block plan.

A backbone (``create_model(..., features_only=True, out_indices=...)``) returns one map per
index; its ``feature_info`` says, per map, the channels, the reduction from the input and
the module the map comes out of, with timm's methods (``channels()``, ``reduction()``,
``module_name()``, ``get_dicts()``). A classifier's ``feature_info`` is timm's plain list
of every feature point's dict.
"""
from .plan import build_plan


def feature_dicts(plan):
    """timm's dicts of every feature point: the stem's ``act1``, then each stage."""
    return [dict(num_chs=p.channels, reduction=p.reduction, module=p.module, index=i)
            for i, p in enumerate(plan.features)]


class FeatureInfo:
    """timm's ``FeatureInfo``: ``out_indices`` picks the points a backbone returns, in order."""

    def __init__(self, spec):
        plan = build_plan(spec)
        self.info = feature_dicts(plan)
        self.out_indices = plan.out_indices

    def get(self, key, idx=None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys=None, idx=None):
        picked = self.out_indices if idx is None else ([idx] if isinstance(idx, int) else idx)
        dicts = [self.info[i] for i in picked]
        out = [d if keys is None else {k: d[k] for k in keys} for d in dicts]
        return out[0] if isinstance(idx, int) else out

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self):
        return len(self.info)
