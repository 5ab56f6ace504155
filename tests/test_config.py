"""The engine's configuration: one object, read from the environment once (not at import), passed down."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from loragraph.loaders.config import DEFAULT_LORA_CACHE_BYTES, DEFAULT_PARKED_BYTES, EngineConfig

LOADERS = Path(__file__).resolve().parents[1] / "loaders"


def test_from_env_reads_every_setting_and_names_a_bad_one():
    env = {"LORAGRAPH_LORA_CACHE_BYTES": "123", "LORAGRAPH_PARKED_BYTES": "0",
           "LORAGRAPH_PIPELINE_CACHE_BYTES": "456", "LORAGRAPH_FAST_PATHS": "OFF"}
    assert EngineConfig.from_env(env) == EngineConfig(123, 0, 456, "off")
    assert EngineConfig.from_env({}) == EngineConfig(DEFAULT_LORA_CACHE_BYTES, DEFAULT_PARKED_BYTES, None,
                                                     "auto")
    with pytest.raises(ValueError, match="LORAGRAPH_PARKED_BYTES"):
        EngineConfig.from_env({"LORAGRAPH_PARKED_BYTES": "1GB"})
    with pytest.raises(ValueError, match="LORAGRAPH_FAST_PATHS"):
        EngineConfig.from_env({"LORAGRAPH_FAST_PATHS": "fast"})


def test_only_config_reads_the_environment():
    readers = []
    for path in LOADERS.rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(f"{path.relative_to(LOADERS)}:{node.lineno}")
    assert readers == []


def test_importing_the_engine_reads_no_setting():
    code = ("import loragraph.loaders.engine, loragraph.loaders.store, loragraph.nodes\n"
            "from loragraph.loaders import config, store\n"
            "assert config._config is None and store._CACHE is None, 'read at import'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_an_engine_passes_its_configuration_down(configured):
    from loragraph.loaders import fence, store
    from loragraph.loaders.engine import Engine

    try:
        engine = Engine(config=EngineConfig(lora_cache_bytes=12345, parked_bytes=7, pipeline_cache_bytes=89,
                                            fast_paths="off"))
        assert engine.pipelines.budget == 89 and store.lora_cache_stats()["max_bytes"] == 12345
        assert not fence.fast_paths()
        live = engine.live(engine.load_pipeline("builtin:tiny-sd").source)
        assert live.parked_bytes == 7
    finally:
        fence.configure(None)
        store.set_lora_cache_limit(store.DEFAULT_CACHE_BYTES)
