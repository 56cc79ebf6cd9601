/* Arms a Lua coroutine's CPU hook from a signal handler, on the thread that runs it.
 *
 * A count hook slows every Lua instruction while it is set (Lua 5.4 takes its slow path), even
 * when it never fires. So a run's coroutine starts with no hook, and when its CPU budget is
 * close to spent, the worker's alarm thread sends this signal to the Lua thread; the handler
 * sets the hook on the coroutine that thread is running. This is how Lua's own interpreter
 * (lua.c) stops a script on Ctrl-C: lua_sethook is the one Lua API call made to be called
 * from a signal handler, and here it runs on the interrupted thread itself, never
 * concurrently with it.
 *
 * lupa exposes no such call, but its lua54 module exports Lua's C API symbols: they are
 * looked up there once, with dlsym. Nothing here allocates or takes a lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <signal.h>
#include <string.h>

typedef struct lua_State lua_State;
typedef struct lua_Debug lua_Debug;
typedef void (*lua_Hook)(lua_State *L, lua_Debug *ar);
typedef void (*sethook_fn)(lua_State *L, lua_Hook func, int mask, int count);
typedef lua_Hook (*gethook_fn)(lua_State *L);
typedef int (*gethookcount_fn)(lua_State *L);

#define LUA_MASKCOUNT (1 << 3)

/* Set once by install() before any signal can arrive; read-only afterwards. */
static sethook_fn set_hook = NULL;
static lua_Hook debug_hook = NULL; /* the debug library's dispatcher to the Lua hook */
static int hook_count = 0;
static int installed_signal = 0;

/* The coroutine this thread is running a step of, or NULL between steps. */
static __thread lua_State *volatile running = NULL;

static void on_alarm(int signum) {
    (void)signum;
    lua_State *L = running;
    if (L != NULL) {
        set_hook(L, debug_hook, LUA_MASKCOUNT, hook_count);
    }
}

/* install(library_path, probe_state, signum): probe_state is a coroutine whose hook the
 * debug library set (debug.sethook with a count), so its hook is the dispatcher to copy. */
static PyObject *install(PyObject *self, PyObject *args) {
    const char *path;
    unsigned long long probe;
    int signum;
    (void)self;
    if (!PyArg_ParseTuple(args, "sKi", &path, &probe, &signum)) {
        return NULL;
    }
    void *library = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (library == NULL) {
        PyErr_Format(PyExc_OSError, "lupa's Lua library is not loaded: %s", dlerror());
        return NULL;
    }
    sethook_fn sethook = (sethook_fn)dlsym(library, "lua_sethook");
    gethook_fn gethook = (gethook_fn)dlsym(library, "lua_gethook");
    gethookcount_fn gethookcount = (gethookcount_fn)dlsym(library, "lua_gethookcount");
    if (sethook == NULL || gethook == NULL || gethookcount == NULL) {
        dlclose(library);
        PyErr_SetString(PyExc_OSError, "lupa's Lua library does not export lua_sethook");
        return NULL;
    }
    lua_State *state = (lua_State *)(uintptr_t)probe;
    lua_Hook hook = gethook(state);
    int count = gethookcount(state);
    if (hook == NULL || count <= 0) {
        dlclose(library);
        PyErr_SetString(PyExc_ValueError, "the probe coroutine has no count hook");
        return NULL;
    }
    if (installed_signal != 0) {
        /* Already installed in this process: the same library gives the same dispatcher. */
        dlclose(library);
        if (installed_signal != signum || hook != debug_hook || count != hook_count) {
            PyErr_SetString(PyExc_ValueError, "the CPU alarm is installed with other settings");
            return NULL;
        }
        Py_RETURN_NONE;
    }
    set_hook = sethook;
    debug_hook = hook;
    hook_count = count;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_alarm;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(signum, &action, NULL) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    installed_signal = signum;
    /* The library stays open: its functions are called from the handler from now on. */
    Py_RETURN_NONE;
}

static PyObject *enter(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long long state = PyLong_AsUnsignedLongLong(arg);
    if (state == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    running = (lua_State *)(uintptr_t)state;
    Py_RETURN_NONE;
}

static PyObject *leave(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    running = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(library_path, probe_state, signum): look up lua_sethook, handle signum."},
    {"enter", enter, METH_O, "enter(state): this thread now runs a step of that coroutine."},
    {"leave", leave, METH_NOARGS, "leave(): this thread's step ended."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "moonshard.sandbox._cpualarm",
    "Arms a Lua coroutine's CPU hook from a signal handler.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpualarm(void) { return PyModule_Create(&module); }
