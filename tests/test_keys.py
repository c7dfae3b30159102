"""Key names and the namespace prefix (rusty-sidekiq.md section 6)."""

from __future__ import annotations

from kombu_sidekiq.keys import Keys


def test_plain_keys_are_sidekiqs_own() -> None:
    keys = Keys()
    assert keys.queue("default") == "queue:default"
    assert (keys.queues, keys.schedule, keys.retry, keys.dead) == (
        "queues",
        "schedule",
        "retry",
        "dead",
    )
    assert keys.processes == "processes"
    assert keys.periodic == "periodic"


def test_namespace_prefixes_every_key_with_one_colon() -> None:
    keys = Keys("yolo_app")
    assert keys.queue("default") == "yolo_app:queue:default"
    assert (
        keys.unique("default", "HelloWorker", "ab")
        == "yolo_app:sidekiq:unique:default:HelloWorker:ab"
    )
    assert keys.schedule == "yolo_app:schedule"


def test_queue_name_inverts_queue_under_any_namespace() -> None:
    for keys in (Keys(), Keys("ns")):
        assert keys.queue_name(keys.queue("a:b")) == "a:b"
        assert keys.queue_name(keys.kombu("celery.pidbox")) is None
