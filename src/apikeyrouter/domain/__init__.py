"""Pure rules: functions of (state, event, now). No I/O, no trio."""
