"""The published VWO Python SDK, unmodified, keeping its assignments in ussdb.

Runs offline: is_development_mode=True turns the SDK's event dispatcher off, and the settings file
is written here instead of fetched.
"""

import threading

import pytest
import ussdb
import vwo  # vwo-python-sdk; a missing SDK must fail the run, not skip it

from conftest import CAMPAIGN_KEY, GOALS, settings_file

USERS = ["user-%04d" % i for i in range(400)]


def launch(storage, control_weight=50, variation_weight=50):
    instance = vwo.launch(
        settings_file(control_weight, variation_weight),
        user_storage=storage,
        is_development_mode=True,
        log_level=vwo.LOG_LEVELS.ERROR,
    )
    # launch returns None (and logs) when it rejects its arguments, the user storage included.
    assert instance is not None, "vwo.launch rejected the settings or the user storage"
    return instance


class Recorder:
    """Passes calls through to a UserStorage and writes down what the SDK asked."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def get(self, *args, **kwargs):
        self.calls.append(("get", args, kwargs))
        result = self.inner.get(*args, **kwargs)
        self.calls.append(("got", result))
        return result

    def set(self, *args, **kwargs):
        self.calls.append(("set", tuple(dict(a) for a in args), kwargs))
        return self.inner.set(*args, **kwargs)


def test_sdk_calls_get_and_set_with_the_shapes_userstorage_speaks(store_dir):
    with ussdb.UserStorage(store_dir) as storage:
        rec = Recorder(storage)
        sdk = launch(rec)
        variation = sdk.activate(CAMPAIGN_KEY, "alice")
        assert variation in ("Control", "Variation-1")
        assert sdk.track(CAMPAIGN_KEY, "alice", GOALS[0]) == {CAMPAIGN_KEY: True}

        assert rec.calls == [
            ("get", ("alice", CAMPAIGN_KEY), {}),
            ("got", None),
            ("set", ({"userId": "alice", "campaignKey": CAMPAIGN_KEY, "variationName": variation},), {}),
            ("get", ("alice", CAMPAIGN_KEY), {}),
            ("got", {"userId": "alice", "campaignKey": CAMPAIGN_KEY, "variationName": variation}),
            (
                "set",
                (
                    {
                        "userId": "alice",
                        "campaignKey": CAMPAIGN_KEY,
                        "variationName": variation,
                        "goalIdentifiers": GOALS[0],
                    },
                ),
                {},
            ),
        ]
        # The engine keeps the goal list in its own field; the SDK-facing shape calls it plural.
        assert storage.store.get("alice", CAMPAIGN_KEY)["goalIdentifier"] == GOALS[0]
        assert storage.get("alice", CAMPAIGN_KEY)["goalIdentifiers"] == GOALS[0]


def test_every_user_keeps_their_variation_after_the_weights_move(store_dir):
    with ussdb.UserStorage(store_dir) as storage:
        sdk = launch(storage, 50, 50)
        first = {u: sdk.activate(CAMPAIGN_KEY, u) for u in USERS}
    seen = set(first.values())
    assert seen == {"Control", "Variation-1"}, "a 50/50 split over 400 users should use both variations"

    # Without storage, 100/0 sends everyone to Control: that is what stickiness has to beat.
    unsticky = launch(None, 100, 0)
    assert {unsticky.activate(CAMPAIGN_KEY, u) for u in USERS} == {"Control"}

    with ussdb.UserStorage(store_dir) as reopened:
        sdk = launch(reopened, 100, 0)
        after = {u: sdk.activate(CAMPAIGN_KEY, u) for u in USERS}
        assert after == first
        # A user first seen after the change follows the new weights.
        assert sdk.activate(CAMPAIGN_KEY, "newcomer") == "Control"
        for u in USERS:
            assert reopened.get(u, CAMPAIGN_KEY) == {
                "userId": u,
                "campaignKey": CAMPAIGN_KEY,
                "variationName": first[u],
            }


def test_a_goal_is_counted_once_across_restarts_and_new_goals_are_appended(store_dir):
    with ussdb.UserStorage(store_dir) as storage:
        sdk = launch(storage)
        variation = sdk.activate(CAMPAIGN_KEY, "bob")
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[0]) == {CAMPAIGN_KEY: True}
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[0]) == {CAMPAIGN_KEY: False}

    with ussdb.UserStorage(store_dir) as storage:
        sdk = launch(storage, 100, 0)
        # Tracked before the restart: not counted again.
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[0]) == {CAMPAIGN_KEY: False}
        # A new goal is counted and appended with the SDK's separator.
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[1]) == {CAMPAIGN_KEY: True}
        assert storage.get("bob", CAMPAIGN_KEY) == {
            "userId": "bob",
            "campaignKey": CAMPAIGN_KEY,
            "variationName": variation,
            "goalIdentifiers": GOALS[0] + "_vwo_" + GOALS[1],
        }

    with ussdb.UserStorage(store_dir) as storage:
        sdk = launch(storage, 100, 0)
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[0]) == {CAMPAIGN_KEY: False}
        assert sdk.track(CAMPAIGN_KEY, "bob", GOALS[1]) == {CAMPAIGN_KEY: False}
        assert sdk.activate(CAMPAIGN_KEY, "bob") == variation
        assert storage.store.get("bob", CAMPAIGN_KEY)["goalIdentifier"] == "signup_vwo_purchase"


def test_track_before_activate_is_refused_and_stores_nothing(store_dir):
    # With a user storage the SDK only tracks users it has stored, so nothing may be conjured up.
    with ussdb.UserStorage(store_dir) as storage:
        sdk = launch(storage)
        assert sdk.track(CAMPAIGN_KEY, "stranger", GOALS[0]) == {CAMPAIGN_KEY: False}
        assert storage.get("stranger", CAMPAIGN_KEY) is None


@pytest.mark.parametrize("durability", ["periodic", "immediate"])
def test_eight_threads_activating_at_once_lose_nothing(store_dir, durability):
    threads_n, per_thread, shared_n = 8, 150, 40
    shared = ["shared-%02d" % i for i in range(shared_n)]
    barrier = threading.Barrier(threads_n)
    results = [None] * threads_n
    errors = []

    with ussdb.Store(store_dir, durability=durability) as store:
        sdk = launch(ussdb.UserStorage(store))

        def worker(t):
            try:
                mine = ["t%d-user-%03d" % (t, i) for i in range(per_thread)]
                barrier.wait()
                # Interleave own users with ones every thread activates, so the same keys race too.
                got = {}
                for i, u in enumerate(mine):
                    got[u] = sdk.activate(CAMPAIGN_KEY, u)
                    s = shared[i % shared_n]
                    got[s] = sdk.activate(CAMPAIGN_KEY, s)
                results[t] = got
            except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors

        merged = {}
        for got in results:
            for u, v in got.items():
                assert v in ("Control", "Variation-1")
                assert merged.setdefault(u, v) == v, "threads disagree about %s" % u
        assert len(merged) == threads_n * per_thread + shared_n
        for u, v in merged.items():
            assert store.get(u, CAMPAIGN_KEY)["variationName"] == v

    # And all of it is there after a reopen.
    with ussdb.Store(store_dir) as store:
        for u, v in merged.items():
            assert store.get(u, CAMPAIGN_KEY) == {"userId": u, "campaignKey": CAMPAIGN_KEY, "variationName": v}
