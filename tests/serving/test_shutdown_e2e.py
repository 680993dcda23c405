"""Stopping a real `bentoml serve` with SIGTERM (what Ctrl-C, `kill` and Kubernetes send): the requests it
already holds are answered on every protocol, and it exits cleanly (docs/serving.md, "Stopping").

The requests are made to wait in the batcher (a 1.5 s queue delay), so SIGTERM lands while all of them
are in flight."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import numpy as np
import tritonclient.grpc.aio as grpc_aio

from tests.serving.server import REQUEST_TIMEOUT, direct_outputs, serving

PER_PROTOCOL = 4
QUEUE_DELAY_S = 1.5


def test_sigterm_answers_the_requests_in_flight_on_every_protocol_and_exits_cleanly(registered):
    with serving({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": "64",
                  "CAPSNET_MAX_QUEUE_DELAY_MS": str(int(QUEUE_DELAY_S * 1000))}) as server:
        name = registered.tag.name
        images = np.random.default_rng(0).random((3 * PER_PROTOCOL, 1, 28, 28), dtype=np.float32)

        async def json_api(image: np.ndarray) -> np.ndarray:
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
                answer = await client.post(server.url + "/classify", json={"images": image[None].tolist()})
                assert answer.status_code == 200, answer.text
                return np.array(answer.json()[0]["probabilities"])

        async def oip_rest(image: np.ndarray) -> np.ndarray:
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
                answer = await client.post(
                    f"http://127.0.0.1:{server.oip_port}/v2/models/{name}/infer",
                    json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                      "data": image.ravel().tolist()}], "outputs": [{"name": "probabilities"}]})
                assert answer.status_code == 200, answer.text
                return np.array(answer.json()["outputs"][0]["data"])

        async def oip_grpc(image: np.ndarray) -> np.ndarray:
            client = grpc_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            try:
                tensor = grpc_aio.InferInput("image", [1, 1, 28, 28], "FP32")
                tensor.set_data_from_numpy(image[None])
                answer = await client.infer(name, [tensor], client_timeout=REQUEST_TIMEOUT)
                return answer.as_numpy("probabilities")[0]
            finally:
                await client.close()

        async def stop_while_in_flight() -> list:
            senders = [json_api] * PER_PROTOCOL + [oip_rest] * PER_PROTOCOL + [oip_grpc] * PER_PROTOCOL
            requests = [asyncio.create_task(send(image)) for send, image in zip(senders, images, strict=True)]
            await asyncio.sleep(QUEUE_DELAY_S / 3)  # all sent, none answered: they wait for batch-mates
            assert not any(r.done() for r in requests), "answered before SIGTERM: the test proves nothing"
            os.killpg(server.process.pid, signal.SIGTERM)
            return await asyncio.gather(*requests)

        answers = asyncio.run(stop_while_in_flight())
        # each answer is its own image's, as ONNX Runtime gives it on the model file
        np.testing.assert_allclose(np.stack(answers), direct_outputs(registered, images)["probabilities"],
                                   rtol=0, atol=1e-6)
        # a hang guard, not a speed check: the drain is done when every answer above came back
        assert server.process.wait(timeout=60) == 0, server.output()
        log = server.output(tail=10**6)
        assert "Completed async cleanup hook: stop_protocols" in log and "Traceback" not in log, log[-3000:]
