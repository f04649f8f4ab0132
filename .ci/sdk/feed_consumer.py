import json
import os
import pathlib
import time
import urllib.error
import urllib.request

API = os.environ.get("USERS_API_URL", "http://127.0.0.1:5000")
POSITION = pathlib.Path("feed.position")  # the id of the last event handled


def follow() -> None:
    last = POSITION.read_text() if POSITION.exists() else "0"
    headers = {"Authorization": f"Bearer {os.environ['KEY']}", "Last-Event-ID": last}
    request = urllib.request.Request(f"{API}/api/v1/events/stream", headers=headers)
    with urllib.request.urlopen(request) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: ") :])
                print(event["id"], event["type"], event["user_id"])  # apply it here
                POSITION.write_text(str(event["id"]))


while True:
    try:
        follow()
    except urllib.error.HTTPError as error:
        if error.code == 410:  # too far behind: list the users again, then follow anew
            raise SystemExit(json.load(error)["detail"])
        print("retrying:", error)
    except OSError as error:  # the server restarted, the network failed: resume
        print("reconnecting:", error)
    time.sleep(2)
