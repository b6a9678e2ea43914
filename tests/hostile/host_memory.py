# Exhaust memory.
blocks = [bytearray(1 << 30) for _ in range(64)]

def add(a, b):
    return a + b
