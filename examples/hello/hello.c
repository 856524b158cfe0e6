// SPDX-License-Identifier: GPL-2.0
/* The smallest useful out-of-tree module: says hello when loaded. */
#include <linux/init.h>
#include <linux/module.h>

static int __init ckms_hello_init(void)
{
	pr_info("ckms_hello: hello from an out-of-tree module\n");
	return 0;
}

static void __exit ckms_hello_exit(void)
{
	pr_info("ckms_hello: goodbye\n");
}

module_init(ckms_hello_init);
module_exit(ckms_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ckms example: hello");
MODULE_VERSION("1.0");
