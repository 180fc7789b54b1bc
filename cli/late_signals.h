#ifndef LOOM_CLI_LATE_SIGNALS_H
#define LOOM_CLI_LATE_SIGNALS_H

/* For a rank of a distributed run, before loom_run_experiment: SIGINT and
 * SIGTERM that reach the process outside the runner's watch (the runner
 * puts this disposition back after its first signal and at its end) are
 * ignored once; the next one ends the process by its default action. */
void loom_cli_hold_late_signals(void);

/* How many signals the hold has ignored (for tests). */
int loom_cli_late_signals(void);

#endif
