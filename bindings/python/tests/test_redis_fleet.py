"""UserStorage(path, redis_url=...) under the published VWO Python SDK against a real redis-server:
two stores on two directories (two servers of a fleet) sharing one Redis keep one variation per
user, goals tracked on either server unite, and sets made while Redis is down are shipped later.

Each test starts its own redis-server on a free loopback port; without one the test fails, naming
the install command.
"""

import json
import shutil
import socket
import subprocess
import time

import pytest
import ussdb
import vwo  # vwo-python-sdk; a missing SDK must fail the run, not skip it

from conftest import CAMPAIGN_KEY, GOALS, settings_file

INSTALL = "redis-server not found: install it with `apt-get install -y redis-server`"


class RedisServer:
    def __init__(self, workdir):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(INSTALL)
        self.exe = exe
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None
        self.start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while self.command("PING") != "PONG":
            if time.time() > deadline:
                self.kill()
                pytest.fail("redis-server on port %d did not start" % self.port)
            time.sleep(0.02)

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def command(self, *args):
        """One command in RESP; returns a str, an int, or None (no such key, or no server)."""
        payload = b""
        for command in (args, ("QUIT",)):
            payload += b"*%d\r\n" % len(command)
            for a in command:
                a = a.encode()
                payload += b"$%d\r\n%s\r\n" % (len(a), a)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as c:
                c.sendall(payload)
                reply = b""
                # QUIT makes the server close the connection after its replies.
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return None
        head, _, rest = reply.partition(b"\r\n")
        if head.startswith(b"+"):
            return head[1:].decode()
        if head.startswith(b":"):
            return int(head[1:])
        if head == b"$-1" or head.startswith(b"-LOADING") or not head:
            return None
        if head.startswith(b"$"):
            return rest[: int(head[1:])].decode()
        raise AssertionError("unexpected reply %r" % reply)


@pytest.fixture
def redis(tmp_path):
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    yield server
    server.kill()


def launch(storage, control_weight, variation_weight):
    instance = vwo.launch(
        settings_file(control_weight, variation_weight),
        user_storage=storage,
        is_development_mode=True,
        log_level=vwo.LOG_LEVELS.ERROR,
    )
    assert instance is not None, "vwo.launch rejected the settings or the user storage"
    return instance


USERS = ["user-%03d" % i for i in range(60)]


def test_two_stores_sharing_one_redis_keep_one_variation_per_user(tmp_path, redis):
    # fresh_for=0: every get of a mapping not waiting for Redis asks Redis, so goals tracked on the
    # other server are seen at once.
    a = ussdb.UserStorage(str(tmp_path / "a"), redis_url=redis.url, fresh_for=0)
    b = ussdb.UserStorage(str(tmp_path / "b"), redis_url=redis.url, fresh_for=0)
    # The two servers' settings disagree completely: a fresh assignment on A is always Control, on B
    # always Variation-1. Whatever a user got first must stick on both.
    sdk_a = launch(a, 100, 0)
    sdk_b = launch(b, 0, 100)
    sequential, racing = USERS[:30], USERS[30:]

    for user in sequential:
        assert sdk_a.activate(CAMPAIGN_KEY, user) == "Control"
    a.flush(10)
    for user in sequential:
        assert sdk_b.activate(CAMPAIGN_KEY, user) == "Control", user

    # Both servers assign before either has shipped: each picks its own; Redis keeps the first that
    # reaches it and the other server's copy takes it.
    for user in racing:
        sdk_a.activate(CAMPAIGN_KEY, user)
        sdk_b.activate(CAMPAIGN_KEY, user)
    a.flush(10)
    b.flush(10)
    for user in USERS:
        stored = json.loads(redis.command("GET", "%s:%s" % (CAMPAIGN_KEY, user)))
        assert stored["userId"] == user and stored["campaignKey"] == CAMPAIGN_KEY
        winner = stored["variationName"]
        assert a.get(user, CAMPAIGN_KEY)["variationName"] == winner, user
        assert b.get(user, CAMPAIGN_KEY)["variationName"] == winner, user
        assert sdk_a.activate(CAMPAIGN_KEY, user) == winner
        assert sdk_b.activate(CAMPAIGN_KEY, user) == winner

    # A goal tracked on each server: Redis holds both, and both servers see both.
    user = USERS[0]
    assert sdk_a.track(CAMPAIGN_KEY, user, GOALS[0]) == {CAMPAIGN_KEY: True}
    a.flush(10)
    assert sdk_b.track(CAMPAIGN_KEY, user, GOALS[1]) == {CAMPAIGN_KEY: True}
    b.flush(10)
    stored = json.loads(redis.command("GET", "%s:%s" % (CAMPAIGN_KEY, user)))
    assert stored["goalIdentifier"].split("_vwo_") == list(GOALS)
    for storage in (a, b):
        assert storage.get(user, CAMPAIGN_KEY)["goalIdentifiers"].split("_vwo_") == list(GOALS)

    stats = a.tier_stats()
    assert stats["outbox_depth"] == 0 and stats["redis_errors"] == 0 and stats["shipped"] > 0
    assert stats["redis_available"] is True
    assert 0.0 <= stats["hit_ratio"] <= 1.0
    a.close()
    b.close()


def test_sets_while_redis_is_down_are_kept_and_shipped_when_it_is_back(tmp_path, redis):
    path = str(tmp_path / "a")
    storage = ussdb.UserStorage(path, redis_url=redis.url)
    sdk = launch(storage, 100, 0)
    redis.kill()
    for user in USERS[:10]:
        assert sdk.activate(CAMPAIGN_KEY, user) == "Control"
        assert storage.get(user, CAMPAIGN_KEY)["variationName"] == "Control"
    assert storage.tier_stats()["outbox_depth"] == 10
    with pytest.raises(ussdb.Error, match="still wait"):
        storage.flush(0.2)
    # Closed and reopened while Redis is down: the outbox is in the local log.
    storage.close()
    storage = ussdb.UserStorage(path, redis_url=redis.url)
    assert storage.tier_stats()["outbox_depth"] == 10
    redis.start()
    storage.flush(30)
    for user in USERS[:10]:
        assert json.loads(redis.command("GET", "%s:%s" % (CAMPAIGN_KEY, user)))["variationName"] == "Control"
    storage.close()


def test_fleet_arguments_are_checked(tmp_path, redis):
    with pytest.raises(ValueError, match="not both"):
        ussdb.UserStorage(str(tmp_path / "x"), redis_url=redis.url, redis_cluster=[redis.url])
    with pytest.raises(TypeError, match="takes a path"):
        ussdb.UserStorage(ussdb.Store(str(tmp_path / "y")), redis_url=redis.url)
    with pytest.raises(ussdb.Error, match="redis://") as refused:
        ussdb.UserStorage(str(tmp_path / "z"), redis_url="http://:secret@nowhere")
    assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="apply with redis_url"):
        ussdb.UserStorage(str(tmp_path / "w"), fresh_for=1)
    for option in ({"ship_batch": 16}, {"retry_max": 1.0}):
        with pytest.raises(ValueError, match="apply with redis_url"):
            ussdb.UserStorage(str(tmp_path / "w"), **option)
    with pytest.raises(ValueError, match="ship_batch must be at least 1"):
        ussdb.UserStorage(str(tmp_path / "b0"), redis_url=redis.url, ship_batch=0)
    for wait in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="retry_max must be seconds > 0"):
            ussdb.UserStorage(str(tmp_path / "r0"), redis_url=redis.url, retry_max=wait)
    plain = ussdb.UserStorage(str(tmp_path / "v"))
    assert plain.tier_stats() is None
    plain.flush()
    plain.close()
    # A one-seed Cluster spec is accepted (it is contacted lazily, like redis_url).
    with ussdb.UserStorage(str(tmp_path / "c"), redis_cluster=[redis.url]) as clustered:
        assert clustered.tier_stats()["outbox_depth"] == 0


def test_a_second_opener_of_a_tier_directory_is_told_to_use_its_own(tmp_path, redis):
    # What a second gunicorn worker meets when every worker is given the same directory.
    path = str(tmp_path / "tier")
    with ussdb.UserStorage(path, redis_url=redis.url):
        with pytest.raises(ussdb.Error, match="already open") as refused:
            ussdb.UserStorage(path, redis_url=redis.url)
        assert "a directory of its own" in str(refused.value)
    # Once the first has closed, the directory opens again.
    with ussdb.UserStorage(path, redis_url=redis.url) as again:
        assert again.tier_stats()["outbox_depth"] == 0


def _per_worker(base, url, user, opened, done, out):
    import ussdb as u

    storage = u.UserStorage(base, redis_url=url, per_worker=True)
    opened.wait(30)
    storage.set({"userId": user, "campaignKey": CAMPAIGN_KEY, "variationName": "Control"})
    storage.flush()
    out.put((user, str(storage.store.path)))
    done.wait(30)
    storage.close()


def test_per_worker_gives_each_process_its_own_directory_and_redis_joins_them(tmp_path, redis):
    # Three workers of one server on one path, as gunicorn -w 3 would start them.
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    base = str(tmp_path / "uss")
    opened, done, out = ctx.Barrier(4), ctx.Barrier(4), ctx.Queue()
    workers = [
        ctx.Process(target=_per_worker, args=(base, redis.url, "user-%d" % i, opened, done, out))
        for i in range(3)
    ]
    for w in workers:
        w.start()
    opened.wait(30)
    got = dict(out.get(timeout=30) for _ in workers)
    done.wait(30)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    dirs = sorted(p.rsplit("/", 1)[-1] for p in got.values())
    assert dirs == ["worker-0", "worker-1", "worker-2"]
    for user in got:
        stored = json.loads(redis.command("GET", "%s:%s" % (CAMPAIGN_KEY, user)))
        assert stored["variationName"] == "Control"
    # A restarted worker takes a free directory again.
    with ussdb.UserStorage(base, redis_url=redis.url, per_worker=True) as again:
        assert str(again.store.path).endswith("worker-0")
        assert again.get("user-2", CAMPAIGN_KEY)["variationName"] == "Control"
    with pytest.raises(ValueError, match="per_worker"):
        ussdb.UserStorage(str(tmp_path / "plain"), per_worker=True)


def test_shipping_options_ship_every_mapping_in_small_batches(tmp_path, redis):
    # A batch smaller than the sets waiting and a short retry_max: every mapping still reaches Redis, the one
    # set while Redis was down too, once it is back.
    storage = ussdb.UserStorage(str(tmp_path / "s"), redis_url=redis.url, ship_batch=3, retry_max=0.1)
    for i in range(20):
        storage.set({"userId": "u%d" % i, "campaignKey": CAMPAIGN_KEY, "variationName": "Control"})
    storage.flush(10.0)
    assert storage.tier_stats()["shipped"] == 20
    redis.kill()
    storage.set({"userId": "late", "campaignKey": CAMPAIGN_KEY, "variationName": "Variation-1"})
    redis.start()
    storage.flush(10.0)
    assert json.loads(redis.command("GET", "%s:late" % CAMPAIGN_KEY))["variationName"] == "Variation-1"
    for i in range(20):
        assert json.loads(redis.command("GET", "%s:u%d" % (CAMPAIGN_KEY, i)))["variationName"] == "Control"
    storage.close()
