"""The published VWO FME Python SDK (vwo-fme-python-sdk), unmodified, keeping its decisions in ussdb
through ussdb.FmeStorage.

Runs offline: the SDK's `gateway_service` option sends its settings fetch and its events to a server
on 127.0.0.1 that each test starts (conftest.py).
"""

import ussdb
import vwo  # vwo-fme-python-sdk; a missing SDK must fail the run, not skip it

from conftest import (
    ACCOUNT_ID,
    CHECKOUT,
    MEG_A,
    MEG_A_CAMPAIGN,
    MEG_B,
    MEG_B_CAMPAIGN,
    MEG_GROUP,
    SDK_KEY,
    settings,
)

USERS = ["user-%03d" % i for i in range(200)]
MEG_KEY = "_vwo_meta_meg_%d" % MEG_GROUP


def init(server, storage):
    client = vwo.init(
        {
            "sdk_key": SDK_KEY,
            "account_id": str(ACCOUNT_ID),
            "storage": storage,
            "gateway_service": {"url": server.url},
            "logger": {"level": "ERROR"},
        }
    )
    # init returns None (and prints) when it rejects its options or cannot get valid settings.
    assert client is not None, "vwo.init failed"
    assert server.settings_fetches > 0, "the SDK did not fetch its settings from the test server"
    return client


def color(client, feature_key, user):
    flag = client.get_flag(feature_key, {"id": user})
    return flag.get_variable("color", None) if flag.is_enabled() else None


class Recorder:
    """Passes calls through to a connector and writes down what the SDK asked and got."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def get(self, *args):
        result = self.inner.get(*args)
        self.calls.append(("get", args, result))
        return result

    def set(self, data):
        self.calls.append(("set", dict(data)))
        return self.inner.set(data)


def test_sdk_reads_back_exactly_the_record_it_stored(server, store_dir):
    with ussdb.FmeStorage(store_dir) as storage:
        rec = Recorder(storage)
        client = init(server, rec)
        first = color(client, CHECKOUT, "alice")
        assert first in ("grey", "green")

        gets = [c for c in rec.calls if c[0] == "get"]
        sets = [c[1] for c in rec.calls if c[0] == "set"]
        assert gets[0] == ("get", (CHECKOUT, "alice"), None)
        assert len(sets) == 1
        stored = sets[0]
        # What the SDK 1.65 passes: every member, None where it does not apply.
        assert stored == {
            "featureKey": CHECKOUT,
            "userId": "alice",
            "rolloutId": 20,
            "rolloutKey": "checkout_rollout1",
            "rolloutVariationId": 1,
            "experimentId": 21,
            "experimentKey": "checkout_ab1",
            "experimentVariationId": stored["experimentVariationId"],
            "isInHoldoutId": None,
            "notInHoldoutId": [],
        }
        assert stored["experimentVariationId"] in (1, 2)

        rec.calls.clear()
        assert color(client, CHECKOUT, "alice") == first
        got = [c[2] for c in rec.calls if c[0] == "get" and c[1] == (CHECKOUT, "alice")]
        assert got and got[0] == stored
        assert all(type(got[0][k]) is int for k in ("rolloutId", "experimentId", "experimentVariationId"))


def test_users_keep_their_variation_after_the_weights_change_and_the_sdk_is_reinitialised(
    server, store_dir, tmp_path
):
    with ussdb.FmeStorage(store_dir) as storage:
        client = init(server, storage)
        before = {u: color(client, CHECKOUT, u) for u in USERS}
    assert set(before.values()) == {"grey", "green"}, "a 50/50 split should give both variations"

    # Every new decision now goes to "green".
    server.settings = settings(checkout_weights=(0, 100))
    with ussdb.FmeStorage(str(tmp_path / "empty")) as fresh:
        client = init(server, fresh)
        assert {color(client, CHECKOUT, u) for u in USERS} == {"green"}

    with ussdb.FmeStorage(store_dir) as storage:
        client = init(server, storage)
        after = {u: color(client, CHECKOUT, u) for u in USERS}
        assert after == before

        record = storage.get(CHECKOUT, USERS[0])
        assert record["rolloutId"] == 20 and record["experimentId"] == 21
        assert record["experimentVariationId"] == (1 if before[USERS[0]] == "grey" else 2)
        assert storage.store.count_features() == len(USERS)
        report_keys = [r["featureKey"] for r in storage.store.features_of(USERS[0])]
        assert report_keys == [CHECKOUT]


def test_group_winners_stick_after_the_group_priority_changes(server, store_dir, tmp_path):
    with ussdb.FmeStorage(store_dir) as storage:
        client = init(server, storage)
        winners = {}
        for u in USERS:
            a = color(client, MEG_A, u)
            meg = storage.get(MEG_KEY, u)
            assert meg is not None, "the SDK stores the group's winner under %s" % MEG_KEY
            assert meg["experimentVariationId"] == -1
            assert (meg["experimentId"], meg["experimentKey"]) in (
                (MEG_A_CAMPAIGN, "meg_a_ab1"),
                (MEG_B_CAMPAIGN, "meg_b_ab1"),
            )
            winners[u] = meg["experimentId"]
            # meg_a is on exactly for the users whose group winner is its campaign.
            assert (a is not None) == (winners[u] == MEG_A_CAMPAIGN), (u, a, meg)
    assert set(winners.values()) == {MEG_A_CAMPAIGN, MEG_B_CAMPAIGN}

    # meg_b's campaign now wins every new draw.
    server.settings = settings(meg_priority=(MEG_B_CAMPAIGN,))
    with ussdb.FmeStorage(str(tmp_path / "empty")) as fresh:
        client = init(server, fresh)
        assert all(color(client, MEG_B, u) in ("b1", "b2") for u in USERS)

    with ussdb.FmeStorage(store_dir) as storage:
        client = init(server, storage)
        for u in USERS:
            b = color(client, MEG_B, u)
            assert (b is not None) == (winners[u] == MEG_B_CAMPAIGN), (u, b, winners[u])
            a = color(client, MEG_A, u)
            assert (a is not None) == (winners[u] == MEG_A_CAMPAIGN), (u, a, winners[u])
            assert storage.get(MEG_KEY, u)["experimentId"] == winners[u]


def test_fmestorage_speaks_the_sdks_shapes(store_dir):
    with ussdb.Store(store_dir) as store:
        fme = ussdb.FmeStorage(store)
        assert fme.get("f", "u") is None
        record = {
            "featureKey": "f",
            "userId": "u",
            "featureId": 3,
            "rolloutId": None,
            "experimentId": 12,
            "experimentKey": "f_ab",
            "experimentVariationId": 2,
            "isInHoldoutId": [4, 5],
            # Members a later SDK may add come back as given.
            "somethingNew": {"nested": [1, 2.5, None, "x"]},
        }
        fme.set(record)
        back = fme.get("f", "u")
        assert back == record
        assert type(back["featureId"]) is int and type(back["somethingNew"]["nested"][1]) is float
        assert list(back) == list(record)

        # One store serves both SDK generations: a campaign mapping with the same key is apart.
        legacy = ussdb.UserStorage(store)
        legacy.set({"userId": "u", "campaignKey": "f", "variationName": "Control"})
        assert fme.get("f", "u") == record
        assert legacy.get("u", "f")["variationName"] == "Control"
        assert store.forget_user("u") == 2
        assert fme.get("f", "u") is None

        for bad, error in [
            ("not a dict", TypeError),
            ({"featureKey": "f"}, ValueError),
            ({"featureKey": "", "userId": "u"}, ValueError),
            ({"featureKey": "f", "userId": "u", "rolloutId": True}, ValueError),
            ({"featureKey": "f", "userId": "u", "rolloutId": float("nan")}, ValueError),
        ]:
            try:
                fme.set(bad)
            except error:
                pass
            else:
                raise AssertionError("set(%r) did not raise %s" % (bad, error.__name__))
        assert store.count_features() == 0
