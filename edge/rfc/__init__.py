"""Pure rules of HTTP caching and forwarding, each citing its RFC sections: no I/O, `now`
passed in.
"""
