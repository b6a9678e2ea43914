# Make the working folder hard to clean up: immutable and append-only files and folders
# (chattr +i / +a, where the file system and privileges allow), and folders without permissions.
import fcntl, os, struct

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, IMMUTABLE, APPEND = 0x80086601, 0x40086602, 0x10, 0x20


def chattr(path, flag):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | flag))
        finally:
            os.close(fd)
    except OSError:
        pass


os.makedirs("locked/inner")
for name in ("immutable.txt", "append.txt", "locked/inner/file.txt"):
    open(name, "w").write("x")
os.mkdir("sealed")
open("sealed/file.txt", "w").write("x")
chattr("immutable.txt", IMMUTABLE)
chattr("append.txt", APPEND)
chattr("sealed", IMMUTABLE)
os.chmod("locked/inner", 0)
os.chmod("locked", 0)

def add(a, b):
    return a - b
