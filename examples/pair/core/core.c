// SPDX-License-Identifier: GPL-2.0
/* pair_core: exports a function that pair_user needs. */
#include <linux/init.h>
#include <linux/module.h>
#include "../pair.h"

int pair_core_greet(const char *who)
{
	pr_info("pair_core: greeting %s\n", who);
	return 42;
}
EXPORT_SYMBOL_GPL(pair_core_greet);

static int __init pair_core_init(void)
{
	pr_info("pair_core: loaded\n");
	return 0;
}

static void __exit pair_core_exit(void)
{
}

module_init(pair_core_init);
module_exit(pair_core_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ckms example: the providing half of a pair");
