"""State-dict key names and shapes of the original GANgealing checkpoints (tests/data).

``tests/data/official_checkpoint_schema.json`` lists, per module and
configuration, the keys and tensor shapes of the released checkpoints; the
tests hold our modules' state dicts to it.
"""
import json
import os

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'official_checkpoint_schema.json')


def official_modules():
    """{'<module> <configuration>': {key: shape list}} for every recorded configuration."""
    with open(SCHEMA_PATH) as f:
        return json.load(f)['modules']


def official_schema(name):
    """The {key: shape} schema of one module configuration, e.g. 'g_ema size=256 ...'."""
    return official_modules()[name]
