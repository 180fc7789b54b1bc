#ifndef LOOM_CLI_GRID_CMD_H
#define LOOM_CLI_GRID_CMD_H

/* loom grid ...: argv[0] is "grid". Returns the exit code. */
int loom_cli_grid(int argc, char **argv);

#endif
