/* A shared library without a loom_plugin entry point. */
int not_a_loom_plugin(void);
int not_a_loom_plugin(void) { return 1; }
