"""The trainer's architecture presets as a CEL map literal, for the CRD's cross-field rules.

The CRD's rules must see a preset's sizes (a `kvHeads` override has to divide the preset's `heads`), so the
table is embedded in them. It is generated from the trainer's own table (`hack/gen-crd-presets.py` writes it
into crds/trainingjob.yaml) and a unit test checks that the two agree.
"""

from __future__ import annotations

from model_runtime.training.config import PRESETS

# The trainer's keys -> the spec's field names.
FIELDS = {"layers": "layers", "hidden_size": "hiddenSize", "heads": "heads", "kv_heads": "kvHeads",
          "context_length": "contextLength"}


def cel_table() -> str:
    """{'tiny': {'layers': 2, ...}, ...}: preset -> its sizes, under the spec's field names."""
    presets = (f"'{name}': {{" + ", ".join(f"'{FIELDS[key]}': {value}" for key, value in sizes.items()) + "}"
               for name, sizes in PRESETS.items())
    return "{" + ", ".join(presets) + "}"
