"""Fixtures for driving the published VWO FME Python SDK offline.

The SDK fetches its settings over HTTP and sends events to the same host. Its `gateway_service`
option points both at a URL of our choosing, so each test starts a small HTTP server on 127.0.0.1
that serves a settings file built here (and can swap it between SDK inits) and accepts every event.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SDK_KEY = "0123456789abcdef0123456789abcdef"
ACCOUNT_ID = 123456
SETTINGS_PATH = "/server-side/v2-settings"

# Feature flags of the settings file. Campaign keys follow the SDK's convention: featureKey_ruleKey.
CHECKOUT = "checkout"  # a rollout rule, then an A/B rule whose weights the tests change
MEG_GROUP = 7  # a mutually exclusive group of the A/B rules of MEG_A and MEG_B
MEG_A, MEG_B = "meg_a", "meg_b"
MEG_A_CAMPAIGN, MEG_B_CAMPAIGN = 31, 32


def _variation(variation_id, name, weight, color):
    return {
        "id": variation_id,
        "name": name,
        "weight": weight,
        "segments": {},
        "variables": [{"id": 1, "key": "color", "type": "string", "value": color}],
    }


def _campaign(campaign_id, key, kind, variations):
    return {
        "id": campaign_id,
        "key": key,
        "name": key,
        "type": kind,
        "status": "RUNNING",
        "percentTraffic": 100,
        "isForcedVariationEnabled": False,
        "segments": {},
        "variations": variations,
    }


def _feature(feature_id, key, rules):
    return {
        "id": feature_id,
        "key": key,
        "name": key,
        "type": "FEATURE_FLAG",
        "status": "ON",
        "impactCampaign": {},
        "metrics": [{"id": 1, "type": "CUSTOM_GOAL", "identifier": "purchase"}],
        "rules": rules,
    }


def settings(checkout_weights=(50, 50), meg_priority=()):
    """A settings file as VWO's server sends it.

    checkout: rollout rule (campaign 20, 100 %), then A/B rule (campaign 21) with variations
      1 "grey" and 2 "green" weighted `checkout_weights`.
    meg_a, meg_b: one A/B rule each (campaigns 31 and 32, variations "a1"/"a2", "b1"/"b2"),
      mutually exclusive in group 7, drawn 50/50 by the advanced algorithm; `meg_priority` lists
      campaign ids that win outright (the group's priority order).
    """
    grey, green = checkout_weights
    campaigns = [
        _campaign(20, "checkout_rollout1", "FLAG_ROLLOUT", [_variation(1, "Rollout", 100, "none")]),
        _campaign(
            21,
            "checkout_ab1",
            "FLAG_TESTING",
            [_variation(1, "Default", grey, "grey"), _variation(2, "Variation-1", green, "green")],
        ),
        _campaign(
            MEG_A_CAMPAIGN,
            "meg_a_ab1",
            "FLAG_TESTING",
            [_variation(1, "Default", 50, "a1"), _variation(2, "Variation-1", 50, "a2")],
        ),
        _campaign(
            MEG_B_CAMPAIGN,
            "meg_b_ab1",
            "FLAG_TESTING",
            [_variation(1, "Default", 50, "b1"), _variation(2, "Variation-1", 50, "b2")],
        ),
    ]
    features = [
        _feature(
            11,
            CHECKOUT,
            [
                {"type": "FLAG_ROLLOUT", "campaignId": 20, "variationId": 1, "ruleKey": "rollout1"},
                {"type": "FLAG_TESTING", "campaignId": 21, "ruleKey": "ab1"},
            ],
        ),
        _feature(12, MEG_A, [{"type": "FLAG_TESTING", "campaignId": MEG_A_CAMPAIGN, "ruleKey": "ab1"}]),
        _feature(13, MEG_B, [{"type": "FLAG_TESTING", "campaignId": MEG_B_CAMPAIGN, "ruleKey": "ab1"}]),
    ]
    group = {
        "name": "Group 7",
        "campaigns": [str(MEG_A_CAMPAIGN), str(MEG_B_CAMPAIGN)],
        "et": 2,
        "p": [str(c) for c in meg_priority],
        "wt": {str(MEG_A_CAMPAIGN): 50, str(MEG_B_CAMPAIGN): 50},
    }
    return {
        "version": 1,
        "accountId": ACCOUNT_ID,
        "sdkKey": SDK_KEY,
        "campaigns": campaigns,
        "features": features,
        "groups": {str(MEG_GROUP): group},
        "campaignGroups": {str(MEG_A_CAMPAIGN): MEG_GROUP, str(MEG_B_CAMPAIGN): MEG_GROUP},
    }


class SettingsServer:
    """An HTTP server on 127.0.0.1 standing in for VWO's: GET of the settings path answers with
    `self.settings`; any other request (events, usage stats) gets `{}`."""

    def __init__(self):
        self.settings = settings()
        self.settings_fetches = 0
        self.other_requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (the stdlib's name)
                with outer._lock:
                    if self.path.startswith(SETTINGS_PATH):
                        outer.settings_fetches += 1
                        body = outer.settings
                    else:
                        outer.other_requests += 1
                        body = {}
                self._answer(body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._lock:
                    outer.other_requests += 1
                self._answer({})

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def requests(self):
        with self._lock:
            return self.settings_fetches + self.other_requests

    def wait_until_quiet(self, quiet=1.0, limit=30.0):
        """Waits (at most `limit` seconds) until no request came for `quiet` seconds: the SDK's events of the
        last test are still on their way when the tests end."""
        waited, seen = 0.0, self.requests()
        calm = 0.0
        while calm < quiet and waited < limit:
            time.sleep(0.1)
            waited += 0.1
            now = self.requests()
            calm = calm + 0.1 if now == seen else 0.0
            seen = now

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def _server_for_the_session():
    # One server for every test: the SDK sends its events from a thread pool, after get_flag returned, and
    # they must find the server still there.
    srv = SettingsServer()
    try:
        yield srv
    finally:
        srv.wait_until_quiet()
        srv.close()


@pytest.fixture
def server(_server_for_the_session):
    srv = _server_for_the_session
    srv.settings = settings()
    srv.settings_fetches = 0
    return srv


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "ussdb")


@pytest.fixture(autouse=True, scope="session")
def _cancel_sdk_polling_timers():
    """Each vwo.init starts a settings-polling threading.Timer (every 10 minutes unless the settings
    say otherwise) that re-arms itself and is not a daemon thread, so a process that initialised the
    SDK never exits by itself. Cancel those timers once the tests are done."""
    yield
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
