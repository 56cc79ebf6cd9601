"""The one C extension: arming a Lua coroutine's CPU hook from a signal handler.

Optional: without a C compiler moonshard still installs, and its VMs keep their CPU hook set
from the start (docs/ARCHITECTURE.md, "Limits").
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("moonshard.sandbox._cpualarm",
                             sources=["src/moonshard/sandbox/_cpualarm.c"], optional=True)])
