"""The policy core: plain values in, actions out; no file, clock or kernel access.

``state.step`` takes the time, a snapshot, the events and (when it asks for
it) the job list, and returns the new ``CoreState`` and the actions to carry
out; ``timer.next_tick_usec`` says when to wake next. The daemon reads the
kernel, calls these, and carries the actions out.
"""
