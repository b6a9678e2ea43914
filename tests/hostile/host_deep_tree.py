# Leave a folder tree far deeper than a recursive remover (or PATH_MAX) can handle: 3,000 levels.
import os

top = os.getcwd()
try:
    for _ in range(3000):
        os.mkdir("d")
        os.chdir("d")
    open("leaf", "w").write("leaf")
finally:
    os.chdir(top)

def add(a, b):
    return a - b
