<?php

declare(strict_types=1);

namespace Polybus\Tests\Extension;

use PHPUnit\Framework\TestCase;
use ReflectionClass;
use ReflectionExtension;
use ReflectionMethod;
use ReflectionNamedType;
use ReflectionType;

/**
 * `stubs/polybus.stubs.php` describes exactly what the loaded extension declares: the same
 * classes and interfaces, parents, public methods, parameters, defaults and return types.
 * The stubs are loaded under the namespace `PolybusStubs` so both can be reflected at once.
 */
final class StubsTest extends TestCase
{
    private const STUB_NAMESPACE = 'PolybusStubs';

    public static function setUpBeforeClass(): void
    {
        if (class_exists(self::STUB_NAMESPACE . '\\Broker', false)) {
            return;
        }
        $source = (string) file_get_contents(dirname(__DIR__, 2) . '/stubs/polybus.stubs.php');
        $source = preg_replace('/^namespace Polybus\b/m', 'namespace ' . self::STUB_NAMESPACE, $source);
        $source = preg_replace('/^<\?php|declare\(strict_types=1\);/m', '', (string) $source);
        eval((string) $source);
    }

    public function testTheStubsDeclareEveryClassOfTheExtensionAndNoOther(): void
    {
        $extension = array_map('strtolower', (new ReflectionExtension('polybus'))->getClassNames());
        $stubs = array_filter(
            array_merge(get_declared_classes(), get_declared_interfaces()),
            static fn (string $class): bool => str_starts_with($class, self::STUB_NAMESPACE . '\\'),
        );
        $stubs = array_map(static fn (string $class): string => strtolower(self::real($class)), $stubs);
        sort($extension);
        sort($stubs);
        self::assertSame($extension, array_values($stubs));
    }

    /** @return iterable<string, array{string}> */
    public static function classes(): iterable
    {
        foreach ((new ReflectionExtension('polybus'))->getClassNames() as $class) {
            yield $class => [$class];
        }
    }

    /**
     * @dataProvider classes
     */
    public function testEachClassMatchesItsStub(string $class): void
    {
        $real = new ReflectionClass($class);
        $stub = new ReflectionClass(self::STUB_NAMESPACE . substr($class, strlen('Polybus')));
        self::assertSame($real->isInterface(), $stub->isInterface(), "$class: interface or class");
        self::assertSame(
            $real->getParentClass() ? $real->getParentClass()->getName() : null,
            $stub->getParentClass() ? self::real($stub->getParentClass()->getName()) : null,
            "$class: parent",
        );
        self::assertEqualsCanonicalizing(
            $real->getInterfaceNames(),
            array_map([self::class, 'real'], $stub->getInterfaceNames()),
            "$class: interfaces",
        );
        self::assertSame(self::methods($real), self::methods($stub), "$class: methods");
    }

    /**
     * The public methods a class declares itself, as comparable strings.
     *
     * @return array<string, string>
     */
    private static function methods(ReflectionClass $class): array
    {
        $methods = [];
        foreach ($class->getMethods(ReflectionMethod::IS_PUBLIC) as $method) {
            if ($method->getDeclaringClass()->getName() !== $class->getName()) {
                continue;
            }
            $parameters = [];
            foreach ($method->getParameters() as $parameter) {
                $default = $parameter->isDefaultValueAvailable() ? ' = ' . var_export($parameter->getDefaultValue(), true) : '';
                $parameters[] = self::type($parameter->getType()) . ' $' . $parameter->getName() . $default;
            }
            $methods[strtolower($method->getName())] = sprintf(
                '%s%s(%s): %s',
                $method->isStatic() ? 'static ' : '',
                $method->getName(),
                implode(', ', $parameters),
                self::type($method->getReturnType()),
            );
        }
        ksort($methods);

        return $methods;
    }

    private static function type(?ReflectionType $type): string
    {
        if ($type === null) {
            return '';
        }
        if ($type instanceof ReflectionNamedType) {
            $name = self::real($type->getName());

            return ($type->allowsNull() && $name !== 'mixed' && $name !== 'null' ? '?' : '') . $name;
        }

        return self::real((string) $type);
    }

    private static function real(string $name): string
    {
        return preg_replace('/^' . self::STUB_NAMESPACE . '\b/', 'Polybus', ltrim($name, '\\'));
    }
}
