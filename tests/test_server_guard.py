"""The publish guard refuses a candidate whose canary loss explodes; the live version stays."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from livelm.server import create_app
from livelm.server.runtime import Runtime
from tests.server_util import TINY_LEARNER, tiny_settings, wait_done

CANARY = "The library opens at nine o'clock. Visitors may borrow up to five books."


def test_the_guard_refuses_a_version_whose_canary_loss_explodes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Plain SGD on every weight with a learning rate ten thousand times too large, and
    # documents crafted to drag the model onto one token: one step makes the canary loss jump
    # by orders of magnitude. (The tiny model's LoRA adapters cannot move it that far.) Every
    # step is a candidate: a few reckless steps in a row can saturate the tiny model into
    # uniform predictions, whose loss, ln(vocabulary), is about its random start's.
    reckless = TINY_LEARNER.replace(update="full", optimizer="sgd", lr=100.0, clip_norm=None)
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path / "data",
        learner=reckless,
        guard_max_rise=0.5,
        publish_every_steps=1,
    )
    with TestClient(create_app(settings)) as client:
        before = client.post("/v1/score", json={"text": CANARY}).json()["documents"][0]["loss"]
        poison = [{"id": f"poison-{i}", "text": "zzzz " * 40} for i in range(4)]
        assert client.post("/v1/documents", json={"documents": poison}).status_code == 202
        statuses = [wait_done(client, d["id"]) for d in poison]

        for status in statuses:
            assert status["state"] == "rejected"
            assert "publish guard refused" in status["reason"]
            assert "canary loss" in status["reason"]
        assert client.get("/v1/snapshots").json()["live"] == 1
        assert [s["version"] for s in client.get("/v1/snapshots").json()["snapshots"]] == [1]
        after = client.post("/v1/score", json={"text": CANARY}).json()
        assert after["version"] == 1 and after["documents"][0]["loss"] == before
        metrics = client.get("/metrics").text
        refused = re.search(r"^livelm_publish_refused_total (\S+)$", metrics, re.M)
        assert refused is not None and float(refused.group(1)) >= 1

        # The learner went back to the last good weights (and will learn on from there).
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        good = load_file(runtime.store.path(1) / "model.safetensors")
        now = runtime.learner.learner.model.state_dict()
        for name, tensor in good.items():
            assert torch.equal(now[name], tensor), name
        assert client.get("/readyz").status_code == 200
