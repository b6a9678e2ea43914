# Multiply: fork, threads, ctypes fork, multiprocessing.
import ctypes, os, threading

for attempt in (os.fork, lambda: threading.Thread(target=lambda: None).start(), lambda: ctypes.CDLL(None).fork(),
                lambda: __import__("multiprocessing").Process(target=print).start()):
    for _ in range(50):
        try:
            if attempt() == 0:
                while True:
                    pass
        except Exception:
            break

def add(a, b):
    return a - b
