"""app.edge.shedding: a full model's requests get their 429 before any parsing; everything else
passes through untouched."""

from __future__ import annotations

import json
from types import SimpleNamespace

from app.edge.shedding import LoadShedMiddleware
from app.server.lifecycle import Lifecycle


class FakeBatcher:
    def __init__(self, saturated: bool):
        self._saturated, self.queued_rows = saturated, 500

    def saturated(self) -> bool:
        return self._saturated

    def retry_after_s(self) -> int:
        return 3

    def expected_wait_s(self) -> float:
        return 2.5


def state(saturated: bool, draining: bool = False) -> SimpleNamespace:
    shed: list[str] = []
    service = SimpleNamespace(generators={"m": FakeBatcher(saturated)}, encoders={"m": FakeBatcher(saturated)})
    return SimpleNamespace(service=service, lifecycle=Lifecycle(ready=True, draining=draining),
                           metrics=SimpleNamespace(shed_request=shed.append), shed=shed)


async def test_a_saturated_models_requests_get_a_429_without_reaching_the_app():
    st = state(saturated=True)
    reached_app = []

    async def app(scope, receive, send):
        reached_app.append(scope["path"])

    mw = LoadShedMiddleware(app, st)
    for path in ("/v1/models/m/samples", "/v1/models/m/edit", "/v1/models/m/map.png", "/v1/models/m/variations"):
        sent: list[dict] = []

        async def send(message, sent=sent):
            sent.append(message)

        await mw({"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}, None, send)
        assert sent[0]["status"] == 429 and (b"retry-after", b"3") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["error"]["code"] == "queue_full"
    assert reached_app == [] and st.shed == ["m"] * 4


async def test_other_paths_free_models_and_draining_pass_through():
    for st, method, path in ((state(True), "GET", "/v1/models"), (state(True), "POST", "/v1/models/other/samples"),
                             (state(False), "POST", "/v1/models/m/samples"),
                             (state(True, draining=True), "POST", "/v1/models/m/samples"),
                             (state(True), "DELETE", "/v1/models/m/samples")):
        reached = []

        async def app(scope, receive, send, reached=reached):
            reached.append(True)

        await LoadShedMiddleware(app, st)({"type": "http", "method": method, "path": path, "root_path": "", "headers": []},
                                          None, None)
        assert reached == [True], (method, path)
        assert st.shed == []
