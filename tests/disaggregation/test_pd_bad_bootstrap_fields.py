"""A request with a bootstrap room or port outside what the transfer layer can carry is a 400
on the prefill and the decode server (native and OpenAI routes), and kills nothing: the
schedulers keep serving and the pools are whole. (A room of -1 used to crash the prefill's
scheduler in its uint64 metadata write, and 2**64 the decode's msgpack encode, while /health
still answered 200.)"""

from __future__ import annotations

import pytest
import requests

from pool_checks import assert_pool_whole

BAD = [
    ("bootstrap_room", -1, "must be in [0,"),
    ("bootstrap_room", 2**64, "must be in [0,"),
    ("bootstrap_room", 2**63, "must be in [0,"),
    ("bootstrap_room", True, "must be an integer"),
    ("bootstrap_room", "7", "wrong type"),
    ("bootstrap_port", 0, "must be in [1, 65535]"),
    ("bootstrap_port", 70000, "must be in [1, 65535]"),
]


@pytest.fixture(scope="module")
def cluster(pd_clusters):
    return pd_clusters("mooncake")


def _fields(cluster, name, value):
    fields = {"bootstrap_host": "127.0.0.1", "bootstrap_port": cluster.bootstrap_ports[0],
              "bootstrap_room": 12345}
    fields[name] = value
    return fields


@pytest.mark.parametrize("name,value,message", BAD)
def test_bad_bootstrap_field_is_400_on_both_sides(cluster, name, value, message):
    for server in cluster.prefills + cluster.decodes:
        r = requests.post(server.url + "/generate", timeout=30, json={
            "text": "Once upon a time", "sampling_params": {"max_new_tokens": 4},
            **_fields(cluster, name, value)})
        assert r.status_code == 400, (server.name, r.status_code, r.text)
        assert name in r.text and message in r.text, r.text
        if not isinstance(value, (bool, str)):  # OpenAI's schema refuses those types itself
            r = requests.post(server.url + "/v1/completions", timeout=30, json={
                "model": requests.get(server.url + "/v1/models", timeout=10).json()["data"][0]
                ["id"], "prompt": "Once", "max_tokens": 4, **_fields(cluster, name, value)})
            assert r.status_code == 400, (server.name, r.status_code, r.text)


def test_servers_still_serve_after_bad_fields(cluster, unified):
    for server in cluster.prefills + cluster.decodes:
        assert requests.get(server.url + "/health", timeout=30).status_code == 200
    body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 8,
                                                           "temperature": 0}}
    out = requests.post(cluster.url + "/generate", json=body, timeout=60)
    assert out.status_code == 200, out.text
    ref = requests.post(unified + "/generate", json=body, timeout=60).json()
    assert out.json()["output_ids"] == ref["output_ids"]
    for server in cluster.prefills + cluster.decodes:
        assert_pool_whole(server.url)
