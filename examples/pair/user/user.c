// SPDX-License-Identifier: GPL-2.0
/* pair_user: depends on pair_core, so modprobe must load that first. */
#include <linux/init.h>
#include <linux/module.h>
#include "../pair.h"

static int __init pair_user_init(void)
{
	pr_info("pair_user: pair_core answered %d\n", pair_core_greet("pair_user"));
	return 0;
}

static void __exit pair_user_exit(void)
{
}

module_init(pair_user_init);
module_exit(pair_user_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ckms example: the using half of a pair");
