/* `loom grid results`: the table of a grid's results (docs/grid-results.md). */
#ifndef LOOM_CLI_GRID_RESULTS_CMD_H
#define LOOM_CLI_GRID_RESULTS_CMD_H

/* argv[0] is "results". Returns the exit code: 0, 1 (cannot read or write),
 * 2 (usage: an option, a filter or a key that is wrong). */
int loom_cli_grid_results(int argc, char **argv);

#endif
