#include <linux/init.h>
#include <linux/module.h>

static int __init init_mod(void)
{
	printk(KERN_INFO "init hlc mod\n");
	return 0;
}

static void __exit exit_mod(void)
{
	printk(KERN_INFO "exit hlc mod\n");
}

module_init(init_mod);
module_exit(exit_mod);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("The test module of DKMS's notes");
