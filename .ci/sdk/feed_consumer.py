import json
import os
import pathlib
import time
import urllib.error
import urllib.request

API, KEY = os.environ.get("USERS_API_URL", "http://127.0.0.1:5000"), os.environ["KEY"]
STREAM = (
    f"{API}/api/v1/events/stream?after=0"  # from the first event, or where we left off
)
PLACE = pathlib.Path("feed.position")  # the id of the last event handled

while True:
    headers = {"Authorization": f"Bearer {KEY}"}
    if PLACE.exists():
        headers["Last-Event-ID"] = PLACE.read_text()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(STREAM, headers=headers)
        ) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    event = json.loads(line[len(b"data: ") :])
                    print(event["id"], event["type"], event["user_id"])  # apply it here
                    PLACE.write_text(str(event["id"]))
    except urllib.error.HTTPError as error:
        if error.code == 410:  # too far behind: list the users again, then follow anew
            raise SystemExit(json.load(error)["detail"])
    except OSError as error:  # the server restarted, the network failed: resume
        print("reconnecting:", error)
    time.sleep(2)
