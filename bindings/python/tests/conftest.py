import json

import pytest

CAMPAIGN_KEY = "sticky_ab"
GOALS = ("signup", "purchase")


def settings_file(control_weight, variation_weight):
    """A settings file as the VWO server would serve it: one running VISUAL_AB campaign with two
    variations and two custom goals. The SDK wants it as a JSON string."""
    return json.dumps(
        {
            "version": 1,
            "accountId": 123456,
            "sdkKey": "0123456789abcdef0123456789abcdef",
            "campaigns": [
                {
                    "id": 101,
                    "key": CAMPAIGN_KEY,
                    "name": "Sticky A/B",
                    "status": "RUNNING",
                    "type": "VISUAL_AB",
                    "percentTraffic": 100,
                    "isForcedVariationEnabled": False,
                    "segments": {},
                    "variations": [
                        {"id": 1, "name": "Control", "weight": control_weight},
                        {"id": 2, "name": "Variation-1", "weight": variation_weight},
                    ],
                    "goals": [
                        {"id": 201, "identifier": GOALS[0], "type": "CUSTOM_GOAL"},
                        {"id": 202, "identifier": GOALS[1], "type": "CUSTOM_GOAL"},
                    ],
                }
            ],
        }
    )


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "ussdb")
