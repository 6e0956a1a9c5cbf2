"""One exception type for problems the user can fix: printed as one line, no traceback."""


class UserError(Exception):
    """Bad input (file, config, data) described in one line that names the file and the problem."""
