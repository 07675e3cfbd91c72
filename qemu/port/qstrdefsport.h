// qstrs specific to this port (none: the scanner finds MP_QSTR_ uses)
